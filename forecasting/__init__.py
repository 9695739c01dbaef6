"""Forecasts of generation and load with calibrated quantiles (statsmodels), chosen per
series by backtest, graded as the grid grades them; and the clear-sky envelope."""

from forecasting.backtest import BacktestResult, backtest
from forecasting.data import DataError, DataReport, load_series
from forecasting.forecaster import HORIZON_STEPS, SeriesForecaster
from forecasting.grading import SCORERS, grade
from forecasting.models import Forecast
from forecasting.series import PowerCurve, SeriesData, Site
from forecasting.solar import PvPlantGeometry, clear_sky_power_w, interval_clear_sky_power_w

__all__ = [
    "HORIZON_STEPS",
    "SCORERS",
    "BacktestResult",
    "DataError",
    "DataReport",
    "Forecast",
    "PowerCurve",
    "PvPlantGeometry",
    "SeriesData",
    "SeriesForecaster",
    "Site",
    "backtest",
    "clear_sky_power_w",
    "grade",
    "interval_clear_sky_power_w",
    "load_series",
]
