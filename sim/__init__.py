"""The virtual patient: a numba physiological plant that emits the streams a rig would.

It imports neither `controller` nor `signals`: it only speaks the LSL stream contract.
"""
