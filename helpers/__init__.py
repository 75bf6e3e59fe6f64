"""sae-lab helpers: the tested logic behind the notebooks.

One module per concept: `profiles` (run profiles), `models` (loading + module paths),
`corpora` (text through `datasets`), `activations` (nnsight collection), `store`
(sharded activation store), `sae` (architectures), `train`, `metrics`, `toy`,
`positions`, `matching`, `plots`.
"""
__version__ = "0.1.0"
