"""The training engine: batches on the device, one step, the epoch loop, optimizers and schedules,
`auto` tuning, progress lines and the result a run gives back (fast.py: the private-API speed code
behind one switch)."""
