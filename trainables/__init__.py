"""Ray Tune trainables: the model families (registry: :mod:`trainables.families`), the shared training
loop that trains any of them, and the data they train on."""
