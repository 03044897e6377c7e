"""The composition roots: ``session.run`` wires a RunConfig into a model, adapters, data, an
optimizer, the loop and the Recorder; ``sweep`` expands a grid of such runs and runs them."""
