"""Test-only modules: fault injection and plug-ins defined outside diffjax."""
