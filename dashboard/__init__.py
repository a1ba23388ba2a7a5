"""HeteroLoRA Studio: the Streamlit dashboard (``streamlit run dashboard/app.py``)."""
