"""Learning: featurizers (posts → model inputs), the MLP models, the training loop with its lazy
optimizers and kernels, and the metrics with their threshold choice. Knows nothing of studies."""
