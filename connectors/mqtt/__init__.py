"""MQTT in and out: the ``mqtt`` source and the ``mqtt`` sink (see docs/mqtt.md).

The registry names ``connectors.mqtt.source:MqttSource`` and ``connectors.mqtt.sink:MqttSink``;
codecs, topic templates and the shared connection live in their own modules.
"""

from connectors.mqtt.sink import MqttSink, MqttSinkConfig
from connectors.mqtt.source import MqttSource, MqttSourceConfig

__all__ = ["MqttSink", "MqttSinkConfig", "MqttSource", "MqttSourceConfig"]
