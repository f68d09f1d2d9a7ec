//! VFIO type1 container compatibility.
