"""The fast training step of the sparse architectures, readable in one place.

- `step`: `StepState` (the step's typed inputs and scratch), the encoder GEMM, `sparse_step` (TopK,
  BatchTopK) and `dense_step` (its autograd reference), the unit-norm decoder bookkeeping;
- `ops`: the sparse primitives it is built from (selections, top-k, sparse decode, sampled products,
  latent-major gradient sums, `attach_grads`);
- `kernels` (+ `kernels.c`): C kernels for those primitives, built with gcc on first use and loaded
  with ctypes; every wrapper returns None where it does not apply and the torch op runs instead.
"""
