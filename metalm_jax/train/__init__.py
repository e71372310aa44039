"""Training: state and optimizer, sharding, checkpoints, metrics, the loop."""
