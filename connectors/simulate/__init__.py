"""``edgesieve simulate``: simulated devices (pumps, environment sensors, cameras) publishing over MQTT.

The pieces: :mod:`.data` (what devices measure), :mod:`.encode` (payload codecs), :mod:`.simulator`
(devices, pacing, determinism), :mod:`.publisher` (the paho-mqtt client) and :mod:`.cli` (the command).
"""

from .simulator import DeviceGroup, Simulator


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(argv)


__all__ = ["DeviceGroup", "Simulator", "main"]
