"""The monitoring stack on one machine without Docker (``exitguard stack up|down|status``).

:mod:`.local` starts and stops the parts, :mod:`.procs` identifies the processes it started
(so ``down`` never signals anything else), :mod:`.receiver` stands in for Slack and Discord.
Imports the core and :mod:`exitguard.artefacts` (the generated rules and Alertmanager config).
"""
