"""The runtime that runs trials, whatever the objective: the trial loop with its exact budget,
launching worker processes, interrupts and requeueing, storages with retries, budget locks,
heartbeats and the storage proxy. Imports neither torch nor scikit-learn nor the model code."""
