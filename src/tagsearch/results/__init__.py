"""After the search: retrain a trial into a results folder (atomic swap, metrics, plots), load it
to predict, and compare folders with the tuned baselines."""
