"""The job contract: what a job is and what may be asked of a farm — the
spec and its validation, the method catalog and the architectures it has
proven, states and stages, queue routing, what a checkpoint's files and a
task directory say (read as data), the texts qfarm ships, and the
statistics every figure's interval comes from. Shared by the client and the
worker; it imports only the ground floor (config, errors, redaction, sizes)."""
