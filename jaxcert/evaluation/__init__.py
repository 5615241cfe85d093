"""Certification and attack modes of `certify.py`, one module each (see `jaxcert.certification`)."""
