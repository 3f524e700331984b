"""A module that raises while it is imported, as a plugin checking its environment might."""

raise RuntimeError("cnntool-broken needs a GPU")
