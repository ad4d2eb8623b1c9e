"""What the commands run: training, validation, evaluation, prediction, export, and the run
directory they share; one scoring module (model or export -> scores) and one NumPy metrics module."""
