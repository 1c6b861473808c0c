"""Local scheduling policies behind one interface (see base.SchedulingPolicy)."""
