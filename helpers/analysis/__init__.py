"""5. What the SAEs learned: convergence, evaluation (in and across corpora), positions, matching, contexts,
atlas, baselines, interventions and steering vectors."""
