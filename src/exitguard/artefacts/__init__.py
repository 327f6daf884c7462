"""Catalogue-driven artefacts: files generated from :mod:`exitguard.catalogue` and committed.

* :mod:`.rules`: the Prometheus alert rules (``alerts/exitguard.rules.yml``);
* :mod:`.alertmanager`: the Alertmanager routing (``alerts/alertmanager.yml``);
* :mod:`.dashboards`: the Grafana dashboards (``dashboards/*.json``, grafana-foundation-sdk);
* :mod:`.drift`: the one check that a committed file still equals what the code generates.

Every file is written with the core's :func:`exitguard.filestore.atomic_write_text`.
``exitguard alerts build|check`` and ``exitguard dashboards build|check`` drive them. This
package is build-time tooling (it needs PyYAML and the Grafana SDK); a bot never imports it.
Nothing is imported here, so the rules never load the Grafana SDK and the dashboards never
load PyYAML.
"""
