"""Training one run: tasks, data, backbones, scoring, metrics, P_init, the loop, stage 1 and 2."""
