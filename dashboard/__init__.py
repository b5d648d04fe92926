"""iotpipe dashboard: Streamlit pages, the SQL they run, and the PDF report."""
