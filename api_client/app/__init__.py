"""The application: `Client` (submit, status, cancel, compare, download,
publish), the compare table, time estimates, artifacts with their manifest,
and hub publishing with its model card. What the CLI, scripts and notebooks
call; it imports the infrastructure, the contract and the ground floor."""
