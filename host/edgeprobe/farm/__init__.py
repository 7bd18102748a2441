"""The device farm: many devices × models × recipes, measured into one results database.

``inventory`` reads the farm file (devices, labels, token variables, the matrix), ``matrix``
expands it into jobs with stable keys. Nothing here imports torch: a farm file is checked, and
its jobs listed, before anything is lowered.
"""
