"""The wire contracts: everything that crosses a process boundary over MQTT.

One MQTT client construction for every process (:mod:`bus.broker`; the agent's fast path
is a documented subclass, :mod:`bus.fast_client`), the MQTT 3.1.1 frames the hot paths
write and split themselves (:mod:`bus.frames`), the topic layout (:mod:`bus.topics`), and
the messages: sensor readings and dead letters (:mod:`bus.readings`), the signed desired
state and the update state agents report (:mod:`bus.desired`). Dependencies: ``models``
below it; the agent, the gateway, the simulators and the offload client side above it.
"""
