"""The run engine the recipes share: config, update step, state and checkpoints, the loop,
evaluation and run logs."""
