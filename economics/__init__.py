"""Operator economics: what serving cost (GPU-hours × staff-set rates) against what it earned.

``economics.gpu_hours`` turns the fleet's own history (worker lifecycle events) and the sampled
engine gauges (``UtilizationHour``) into GPU-seconds; ``economics.report`` sets them against
revenue priced by ``billing.pricing``; ``economics.sampler`` is the beat task that measures busy
and idle serving time.
"""
