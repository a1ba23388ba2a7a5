"""Components of the dashboard's pages: charts (Plotly figures), formatting (labels, units,
durations), forms (the Launch form's presets and checks) and browser hints."""
