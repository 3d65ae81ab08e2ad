"""The study: the spec (search space, defaults, data and training settings as plain data), the
objective a trial runs, and the study's bookkeeping (trial 0, the data fingerprint)."""
