"""The machine a stage runs on: what its CPU and GPU can do (`hardware`), `auto` settings timed
on it and cached (`autotune`), and the memory and devices a run may ask of it (`budget`)."""
