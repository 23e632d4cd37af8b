"""Write examples/quickstart/readings.csv: 3 pumps at 1 Hz for 20 minutes, with a bad row and an overheating episode.

    python examples/quickstart/make_readings.py
"""

from pathlib import Path

import numpy as np


def main(path: Path = Path(__file__).with_name("readings.csv"), seconds: int = 1200, seed: int = 42) -> Path:
    rng = np.random.default_rng(seed)
    start = 1_767_225_600  # 2026-01-01T00:00:00Z
    lines = ["ts,site,device,temperature,pressure,vibration"]
    for t in range(seconds):
        for d in range(3):
            temp = 60 + 5 * np.sin(t / 120 + d) + rng.normal(0, 0.5)
            if d == 2 and 600 <= t < 660:
                temp += 25  # pump3 overheats for a minute
            lines.append(f"{start + t},plant1,pump{d + 1},{temp:.2f},{2.0 + rng.normal(0, 0.05):.3f},{abs(rng.normal(0.3, 0.05)):.3f}")
    lines.insert(1000, f"{start + 333},plant1,pump1,ERR:-17,2.0,0.3")  # a malformed reading: dead-lettered, not fatal
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(main())
