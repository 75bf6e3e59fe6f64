"""6. What a reader sees: figures (`plots`), the feature browser, the README findings, JupyterLab
screenshots."""
