"""The chaos soak's parts: the stack it breaks, the load, the hostile requests, what it observes."""
