#!/usr/bin/env python3
"""The OpenTelemetry OpAMP client from PyPI (`pip install opentelemetry-opamp-client`) against a control center:
the conformance test of agentctl's `POST /v1/opamp`.

    scripts/opamp-client.py ENDPOINT TOKEN SECONDS NAME VERSION HOST

It connects (the full state, with the description), sends heartbeats every second for SECONDS, disconnects,
and prints one JSON line per answer it got: the flags, capabilities and offered heartbeat interval.
"""
import json
import sys
import time

from opentelemetry._opamp.agent import OpAMPAgent
from opentelemetry._opamp.callbacks import OpAMPCallbacks
from opentelemetry._opamp.client import OpAMPClient

endpoint, token, seconds, name, version, host = sys.argv[1:7]


class Callbacks(OpAMPCallbacks):
    def on_message(self, agent, client, message):
        pass

    def on_error(self, agent, client, error_response):
        print(json.dumps({"error": error_response.error_message}), flush=True)


class Client(OpAMPClient):
    def send(self, data):
        answer = super().send(data)
        settings = answer.connection_settings.opamp
        print(
            json.dumps(
                {
                    "flags": answer.flags,
                    "capabilities": answer.capabilities,
                    "heartbeatIntervalSeconds": settings.heartbeat_interval_seconds,
                    "uid": answer.instance_uid.hex(),
                }
            ),
            flush=True,
        )
        return answer


client = Client(
    endpoint=endpoint,
    headers={"Authorization": f"Bearer {token}"},
    agent_identifying_attributes={"service.name": name, "service.version": version},
    agent_non_identifying_attributes={"host.name": host},
)
agent = OpAMPAgent(interval=1, callbacks=Callbacks(), client=client)
agent.start()
time.sleep(float(seconds))
agent.stop()
