// Emulation stand-in for the CUDA runtime header: everything it must provide is in ../cuda_emu.h.
#pragma once
#include "../cuda_emu.h"
