"""Training: the optimizer, the one compiled train step, the validation loss and the loop."""
