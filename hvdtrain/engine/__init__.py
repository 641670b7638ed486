"""The engine: the epoch loop both Trainers run, and what the Horovod backends of both adapters share."""
