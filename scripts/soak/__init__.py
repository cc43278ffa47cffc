"""The soak: a seeded nemesis against everything real, checked from outside (``python -m scripts.soak``)."""
