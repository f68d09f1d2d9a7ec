//! Linux 7.2 iommufd and VFIO type1 uAPI.
