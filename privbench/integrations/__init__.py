"""Outside runtimes: the Flower adapter (the Ray sweep backend lives with the sweeps)."""
