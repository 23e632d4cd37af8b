"""MQTT source and sink (see docs/mqtt.md)."""
