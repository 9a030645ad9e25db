// Definitions of geopref/reference/reference.hpp (to be written).
#pragma once
