"""5. What the SAEs learned: convergence, evaluation, positions, matching, contexts, atlas, baselines,
interventions."""
