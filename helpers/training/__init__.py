"""4. Training SAEs: `config` (TrainConfig), `train` (the trainer), `train_dist` (torchrun), `experiments`
(the plan)."""
