"""5. What the SAEs learned: convergence, evaluation (in and across corpora), the one held-out view,
positions, matching, contexts, atlas, baselines, interventions and steering vectors."""
