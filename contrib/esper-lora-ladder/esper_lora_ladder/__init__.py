"""esper-lora-ladder: an Esper seed-family plugin (the entry-point module is ``plugin``)."""

__version__ = "0.1.0"
