"""Forecasts of generation and load with quantiles (statsmodels), and the clear-sky envelope."""

from forecasting.models import Forecast, Forecaster, LoadForecaster, PvForecaster, WindForecaster
from forecasting.solar import PvPlantGeometry, clear_sky_power_w, interval_clear_sky_power_w

__all__ = [
    "Forecast",
    "Forecaster",
    "LoadForecaster",
    "PvForecaster",
    "PvPlantGeometry",
    "WindForecaster",
    "clear_sky_power_w",
    "interval_clear_sky_power_w",
]
