"""Adapters to the quantization libraries. A method builds its recipe; an
engine loads the model, runs the library and saves the artifact."""
