"""1. The language model: loading it (`models`) and reading or splicing its residual stream (`residuals`)."""
