"""Judging pseudo labels: scores against GT masks (``seco evaluate``), the metrics behind them, picture strips
(``seco show``), the HTML report (``seco report``) and its charts."""
