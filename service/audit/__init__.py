"""The operator audit log: who did what, to what, from where (`service.audit.log`)."""
