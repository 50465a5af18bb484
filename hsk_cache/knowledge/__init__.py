"""Teacher knowledge: the kinds (one module each), the resolved plan, the batch format and the
tensor math they share."""
